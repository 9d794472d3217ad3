"""The two networks, written as the layer lists of their figures.

Every layer is named: the names are the public contract of the service's `/features` route.
The test-time views (ViewBatch, ViewMean) wrap a trained network at export, never in training.
Dropout layers act only in training; the exported features signature leaves them out.
"""

from __future__ import annotations

import keras
from keras import layers


def lenet(num_classes: int, dropout: float) -> keras.Model:
    """LeNet-5 as in the seed figure: 32x32x1 -> 6@28x28 -> 6@14x14 -> 16@10x10 -> 16@5x5 -> 120 -> 100 -> 10."""
    return keras.Sequential(
        [
            keras.Input(shape=(32, 32, 1), name="image"),
            layers.Conv2D(6, 5, strides=1, padding="valid", name="conv1"),  # 28x28x6
            layers.ReLU(name="relu1"),
            layers.MaxPooling2D(2, strides=2, name="pool1"),  # 14x14x6
            layers.Conv2D(16, 5, strides=1, padding="valid", name="conv2"),  # 10x10x16
            layers.ReLU(name="relu2"),
            layers.MaxPooling2D(2, strides=2, name="pool2"),  # 5x5x16
            layers.Flatten(name="flatten"),  # 400
            layers.Dense(120, activation="relu", name="fc1"),
            layers.Dropout(dropout, name="dropout1"),
            layers.Dense(100, activation="relu", name="fc2"),
            layers.Dropout(dropout, name="dropout2"),
            layers.Dense(num_classes, name="fc3"),  # logits
            layers.Softmax(name="softmax"),
        ],
        name="lenet",
    )


def _conv_block(i: int, filters: int) -> list[layers.Layer]:
    # Batch norm sits between conv and ReLU; it is a named layer so /features can show it.
    return [
        layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}"),
        layers.BatchNormalization(name=f"bn{i}"),
        layers.ReLU(name=f"relu{i}"),
    ]


def _vgg(
    name: str,
    input_shape: tuple[int, int, int],
    widths: tuple[int, ...],
    num_classes: int,
    dropout: float,
    softmax: bool,
) -> keras.Model:
    """Blocks of two 3x3 convs (conv, bn, relu) and a 2x2 max-pool per width, then FC 256 and
    the class layer `fc2` (logits), with a `softmax` layer when the net is served."""
    stack: list[layers.Layer] = [keras.Input(shape=input_shape, name="image")]
    for block, filters in enumerate(widths, start=1):
        stack += [
            *_conv_block(2 * block - 1, filters),
            *_conv_block(2 * block, filters),
            layers.MaxPooling2D(2, name=f"pool{block}"),
        ]
    stack += [
        layers.Flatten(name="flatten"),
        layers.Dropout(dropout, name="dropout1"),
        layers.Dense(256, activation="relu", name="fc1"),
        layers.Dropout(dropout, name="dropout2"),
        layers.Dense(num_classes, name="fc2"),  # logits
    ]
    if softmax:
        stack.append(layers.Softmax(name="softmax"))
    return keras.Sequential(stack, name=name)


def scenes_resnet(
    num_classes: int = 4,
    widths: tuple[int, ...] = (32, 64, 128),
    blocks: tuple[int, ...] = (1, 2, 2),
) -> keras.Model:
    """A small ResNet (He et al. 2016): a 3x3 stem, then stages of residual blocks, global average
    pooling and the class layer `fc` (logits), then `softmax`.

    Block `b<s>_<i>`: conv a, bn a, relu a, conv b, bn b, plus the shortcut (a 1x1 conv and bn
    where the shape changes), `add`, relu. The first block of every stage after the first halves
    the resolution: 32x32x32 -> 16x16x64 -> 8x8x128 -> 128 -> 4.
    """
    image = keras.Input(shape=(32, 32, 3), name="image")
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="conv1")(image)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
        for i in range(1, count + 1):
            b = f"b{stage}_{i}"
            stride = 2 if stage > 1 and i == 1 else 1
            shortcut = x
            y = layers.Conv2D(
                width, 3, strides=stride, padding="same", use_bias=False, name=f"{b}_conv_a"
            )(x)
            y = layers.BatchNormalization(name=f"{b}_bn_a")(y)
            y = layers.ReLU(name=f"{b}_relu_a")(y)
            y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{b}_conv_b")(y)
            y = layers.BatchNormalization(name=f"{b}_bn_b")(y)
            if stride != 1 or shortcut.shape[-1] != width:
                shortcut = layers.Conv2D(
                    width, 1, strides=stride, use_bias=False, name=f"{b}_shortcut_conv"
                )(shortcut)
                shortcut = layers.BatchNormalization(name=f"{b}_shortcut_bn")(shortcut)
            x = layers.Add(name=f"{b}_add")([y, shortcut])
            x = layers.ReLU(name=f"{b}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(num_classes, name="fc")(x)  # logits
    probabilities = layers.Softmax(name="softmax")(x)
    return keras.Model(image, probabilities, name="scenes_resnet")


def mnist_teacher(num_classes: int = 10) -> keras.Model:
    """A wider ConvNet that only teaches LeNet in training (knowledge distillation); never exported.

    32x32x1 -> 16@32x32 (x2) -> pool -> 32@16x16 (x2) -> pool -> 256 -> 10 logits.
    """
    return _vgg("mnist_teacher", (32, 32, 1), (16, 32), num_classes, 0.3, softmax=False)


# What each test-time view does to the image (architectures.ViewBatch): a mirror image, or a
# shift of one pixel with zeros (a digit's background) filling the row or column left empty.
VIEWS = ("mirror", "up", "down", "left", "right")


# Where a shifted view reads each pixel from: view[y, x] = image[y + dy, x + dx].
_SHIFTS = {"up": (1, 0), "down": (-1, 0), "left": (0, 1), "right": (0, -1)}


def mean_over_views(rows, views: int):
    """((1 + views) N, D) rows, each image's then each view's -> (N, D), their mean."""
    if not views:
        return rows
    return keras.ops.mean(keras.ops.reshape(rows, (1 + views, -1, rows.shape[-1])), axis=0)


class ViewBatch(layers.Layer):
    """The batch followed by each of its views: (N, H, W, C) -> ((1 + len(views)) N, H, W, C).
    Test-time augmentation inside the served graph (export.view_averaged); the first N rows are
    the images as sent."""

    def __init__(self, views: tuple[str, ...] | list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        unknown = set(views) - set(VIEWS)
        if not views or unknown:
            raise ValueError(f"views must be some of {VIEWS}, got {views}")
        self.views = tuple(views)

    def get_config(self):
        return {**super().get_config(), "views": list(self.views)}

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        # Zeros around the image, once; each shift is a window of it.
        padded = keras.ops.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])

        def view(name: str):
            if name == "mirror":
                return keras.ops.flip(images, axis=2)
            dy, dx = _SHIFTS[name]
            return padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

        return keras.ops.concatenate([images, *(view(v) for v in self.views)], axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


class ViewMean(layers.Layer):
    """The mean of each image's row and its views' rows: ((1 + views) N, D) -> (N, D)."""

    def __init__(self, views: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.views = views

    def get_config(self):
        return {**super().get_config(), "views": self.views}

    def call(self, rows):
        return mean_over_views(rows, self.views)

    def compute_output_shape(self, input_shape):
        return input_shape
