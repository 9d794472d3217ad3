"""Grad-CAM as a LiteRT engine: the SavedModel's `gradcam` signature with its gradient ops
rewritten into ops LiteRT has built in, so that serving Grad-CAM needs no TensorFlow.

The exported signature computes its gradient with tf.GradientTape, whose graph holds gradient
kernels LiteRT lacks (ReluGrad, MaxPoolGrad, StridedSliceGrad, BroadcastGradientArgs). With the
batch fixed at one image (what /gradcam sends) every shape is static, and each of these ops has an
exact equivalent in builtin ops:
- ReluGrad(g, y) = g * (y > 0);
- MaxPoolGrad over non-overlapping windows routes each window's gradient to its first maximum,
  as TensorFlow's kernel does: space_to_depth, arg_max, one_hot, depth_to_space;
- StridedSliceGrad scatters the gradient into zeros at the indices the slice took (scatter_nd);
- BroadcastGradientArgs of static shapes is a constant.
tests/test_engines.py checks the result against the SavedModel's own signature.

Only the converter imports this module (in the subprocess service/engines.py starts); it uses
TensorFlow's convert_variables_to_constants_v2, a function outside TensorFlow's public API that
its own guide documents for freezing a ConcreteFunction: pyproject bounds TensorFlow below 3.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from service.engines import GRADCAM_SIGNATURE as SIGNATURE
from service.metadata import read as read_metadata

# A rewrite builds an op's replacement from its inputs in the new graph; `static` gives the values
# of tensors that follow from the (fixed) shapes alone, for ops whose shape inputs are computed.
Static = Callable[[list[tf.Tensor]], list[np.ndarray]]
Rewrite = Callable[[tf.Operation, list[tf.Tensor], Static], list[tf.Tensor]]


def _relu_grad(op: tf.Operation, inputs: list[tf.Tensor], static: Static) -> list[tf.Tensor]:
    gradients, features = inputs
    return [gradients * tf.cast(features > 0, gradients.dtype)]


def _max_pool_grad(op: tf.Operation, inputs: list[tf.Tensor], static: Static) -> list[tf.Tensor]:
    original, _, gradients = inputs
    ksize, strides = list(op.get_attr("ksize")), list(op.get_attr("strides"))
    n, h, w, c = original.shape.as_list()
    k = ksize[1]
    if (
        op.get_attr("data_format") != b"NHWC"
        or ksize != strides
        or ksize != [1, k, k, 1]
        or h % k
        or w % k
    ):
        raise ValueError(
            f"{op.name}: Grad-CAM's LiteRT conversion handles square, non-overlapping max pooling "
            f"that tiles its input (NHWC), not ksize {ksize}, strides {strides} on {h}x{w}"
        )
    windows = tf.reshape(tf.nn.space_to_depth(original, k), [n, h // k, w // k, k * k, c])
    first_max = tf.one_hot(tf.argmax(windows, axis=3), k * k, axis=3, dtype=gradients.dtype)
    routed = first_max * tf.expand_dims(gradients, 3)
    return [tf.nn.depth_to_space(tf.reshape(routed, [n, h // k, w // k, k * k * c]), k)]


def _strided_slice_grad(
    op: tf.Operation, inputs: list[tf.Tensor], static: Static
) -> list[tf.Tensor]:
    gradients = inputs[4]
    shape_value, begin_value, end_value, strides_value = static(list(op.inputs[:4]))
    masks = {
        name: op.get_attr(name)
        for name in (
            "begin_mask",
            "end_mask",
            "ellipsis_mask",
            "new_axis_mask",
            "shrink_axis_mask",
        )
    }
    # Which elements the forward slice took, found by slicing their flat indices the same way.
    flat = np.arange(int(np.prod(shape_value)), dtype=np.int32).reshape(shape_value)
    scratch = tf.Graph()
    with scratch.as_default():
        sliced = tf.raw_ops.StridedSlice(
            input=flat, begin=begin_value, end=end_value, strides=strides_value, **masks
        )
    taken = tf.compat.v1.Session(graph=scratch).run(sliced)
    scattered = tf.scatter_nd(taken.reshape(-1, 1), tf.reshape(gradients, [-1]), [int(flat.size)])
    return [tf.reshape(scattered, shape_value)]


def _broadcast_gradient_args(
    op: tf.Operation, inputs: list[tf.Tensor], static: Static
) -> list[tf.Tensor]:
    shapes = static(list(op.inputs))
    # The axes along which each input was broadcast: summing the gradient over them undoes it.
    rank = max(len(s) for s in shapes)
    s0, s1 = ([1] * (rank - len(s)) + list(s) for s in shapes)
    return [
        tf.constant([i for i in range(rank) if a[i] == 1 and b[i] != 1], tf.int32)
        for a, b in ((s0, s1), (s1, s0))
    ]


REWRITES: dict[str, Rewrite] = {
    "ReluGrad": _relu_grad,
    "MaxPoolGrad": _max_pool_grad,
    "StridedSliceGrad": _strided_slice_grad,
    "BroadcastGradientArgs": _broadcast_gradient_args,
}


def _rewrite(graph_def: tf.compat.v1.GraphDef) -> tf.compat.v1.GraphDef:
    """Copy the graph op by op, building each op REWRITES names from its replacement. Control
    dependencies are left out: a frozen graph has no variables or other effects to order."""
    out = tf.Graph()
    with out.as_default():
        source = tf.Graph()
        with source.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        tensors: dict[str, tf.Tensor] = {}
        placeholders = [op.outputs[0] for op in source.get_operations() if op.type == "Placeholder"]
        session = tf.compat.v1.Session(graph=source)

        def static(wanted: list[tf.Tensor]) -> list[np.ndarray]:
            # Run twice on different inputs: a value that changes is not a static one.
            values = [
                session.run(
                    wanted,
                    {p: np.full(p.shape, fill, p.dtype.as_numpy_dtype) for p in placeholders},
                )
                for fill in (0, 1)
            ]
            for t, a, b in zip(wanted, *values, strict=True):
                if not np.array_equal(a, b):
                    raise ValueError(f"{t.name} depends on the input, not on shapes alone")
            return values[0]

        for op in source.get_operations():  # already in topological order
            inputs = [tensors[t.name] for t in op.inputs]
            if op.type in REWRITES:
                with tf.name_scope(op.name + "_builtin"):
                    outputs = REWRITES[op.type](op, inputs, static)
                for old, new in zip(op.outputs, outputs, strict=True):
                    tensors[old.name] = tf.ensure_shape(new, old.shape)
                continue
            node = op.node_def
            new = out.create_op(
                op.type,
                inputs,
                [t.dtype for t in op.outputs],
                name=op.name,
                attrs={k: v for k, v in node.attr.items()},
                compute_device=False,
            )
            for old, replacement in zip(op.outputs, new.outputs, strict=True):
                tensors[old.name] = replacement
    return out.as_graph_def()


def convert(model_path: Path) -> bytes:
    """The LiteRT flatbuffer of `model_path`'s Grad-CAM for one image: inputs `image` (1, H, W, C)
    and `class_index` (1,) int32; outputs `heatmap` and `probabilities`."""
    sig_name = read_metadata(model_path)["signatures"]["gradcam"]["name"]
    loaded = tf.saved_model.load(str(model_path))
    signature = loaded.signatures[sig_name]
    image = signature.structured_input_signature[1]["image"]

    specs = [
        tf.TensorSpec([1, *image.shape[1:]], tf.float32, name="image"),
        tf.TensorSpec([1], tf.int32, name="class_index"),
    ]

    @tf.function(input_signature=specs)
    def one_image(image, class_index):
        return signature(image=image, class_index=class_index)

    traced = one_image.get_concrete_function()
    frozen = convert_variables_to_constants_v2(traced)
    # The frozen function's outputs are a flat list in the order of the traced dict's leaves.
    names = tf.nest.flatten({k: k for k in traced.structured_outputs})
    outputs = dict(zip(names, (t.name for t in frozen.outputs), strict=True))
    graph_def = _rewrite(frozen.graph.as_graph_def())

    def imported():
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    pruned = wrapped.prune(
        [wrapped.graph.get_tensor_by_name(t.name) for t in frozen.inputs],
        {name: wrapped.graph.get_tensor_by_name(t) for name, t in outputs.items()},
    )

    module = tf.Module()
    module.gradcam = tf.function(pruned, input_signature=specs)
    # Through a SavedModel, so that the engine has a signature with named inputs and outputs.
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={SIGNATURE: module.gradcam})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()
