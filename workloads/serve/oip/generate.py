"""Regenerate the Python modules of inference.proto with grpcio-tools' bundled protoc.

`python -m neuraxis.workloads.serve.oip.generate` writes them next to the .proto; `generate()`
alone writes into any folder (the drift test compares the two)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# The path protoc records, and the generated gRPC module imports from: the package path, so the
# modules import as neuraxis.workloads.serve.oip.* rather than as a top-level `inference_pb2`.
PROTO = "neuraxis/workloads/serve/oip/inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]  # the folder holding neuraxis/ (whose links lead back here)


def generate(out_dir: Path) -> dict[str, bytes]:
    """Run protoc on inference.proto into `out_dir`; the generated files by name."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc", f"-I{REPO}", f"-I{well_known}", f"--python_out={out_dir}",
        f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", PROTO,
    ]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {REPO / PROTO}")
    folder = out_dir / Path(PROTO).parent
    return {name: (folder / name).read_bytes() for name in GENERATED}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in generate(Path(tmp)).items():
            (HERE / name).write_bytes(data)
            print(f"wrote {HERE / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
