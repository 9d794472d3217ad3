"""kserve's own REST client (InferenceRESTClient) against the service, V2 and V1.

Runs in the kserve venv that tests/test_protocols.py makes (kserve pins a protobuf TensorFlow's
clashes with), never in the project's venv:

    python tests/kserve_client.py URL CASE.json   # prints one JSON object of results

CASE.json: {"model", "png_b64", "tensor" (nested lists, the batch first), "versions"}.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def v2_request(model: str, inputs: list[InferInput]) -> InferRequest:
    return InferRequest(model_name=model, infer_inputs=inputs, request_id="kserve-test")


async def v2(url: str, case: dict) -> dict:
    out: dict = {}
    model, png = case["model"], base64.b64decode(case["png_b64"])
    async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
        out["live"] = await client.is_server_live(url)
        out["ready"] = await client.is_server_ready(url)
        out["model_ready"] = await client.is_model_ready(url, model)
        out["unknown_model_ready"] = await client.is_model_ready(url, "no-such-model")

        # BYTES in binary (the client's default), then FP32 as JSON numbers.
        image = InferInput("image_bytes", [1], "BYTES")
        image.set_data_from_numpy(np.array([png], dtype=np.object_))
        response = await client.infer(url, v2_request(model, [image]), model_name=model)
        out["bytes_binary"] = response.outputs[0].as_numpy().tolist()
        out["bytes_model_name"] = response.model_name
        out["bytes_id"] = response.id

        tensor = np.array(case["tensor"], dtype=np.float32)
        fp32 = InferInput("image", list(tensor.shape), "FP32")
        fp32.set_data_from_numpy(tensor, binary_data=False)
        response = await client.infer(url, v2_request(model, [fp32]), model_name=model)
        out["fp32_json"] = response.outputs[0].as_numpy().tolist()

        fp32 = InferInput("image", list(tensor.shape), "FP32")
        fp32.set_data_from_numpy(tensor, binary_data=True)
        response = await client.infer(url, v2_request(model, [fp32]), model_name=model)
        out["fp32_binary"] = response.outputs[0].as_numpy().tolist()

        try:
            await client.infer(
                url, v2_request("no-such-model", [image]), model_name="no-such-model"
            )
            out["unknown_model"] = None
        except httpx.HTTPStatusError as exc:
            out["unknown_model"] = [exc.response.status_code, str(exc)]
    return out


async def v1(url: str, case: dict) -> dict:
    out: dict = {}
    model = case["model"]
    async with InferenceRESTClient(RESTConfig(protocol="v1", retries=0)) as client:
        out["model_ready"] = await client.is_model_ready(url, model)
        body = {"instances": [{"b64": case["png_b64"]}]}
        out["b64"] = (await client.infer(url, body, model_name=model))["predictions"]
        body = {"instances": case["tensor"]}
        out["tensor"] = (await client.infer(url, body, model_name=model))["predictions"]
        try:
            await client.infer(url, {"instances": [[1.0, 2.0]]}, model_name=model)
            out["bad_shape"] = None
        except httpx.HTTPStatusError as exc:
            out["bad_shape"] = [exc.response.status_code, str(exc)]
    return out


async def main(url: str, case: dict) -> dict:
    return {"v2": await v2(url, case), "v1": await v1(url, case)}


if __name__ == "__main__":
    url, case_path = sys.argv[1], sys.argv[2]
    with open(case_path) as f:
        case = json.load(f)
    print(json.dumps(asyncio.run(main(url, case))))
