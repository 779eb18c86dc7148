"""The Open Inference Protocol's gRPC messages: `inference.proto` (hand-written from the public
protocol description) and the modules protoc generates from it, committed so that neither the
image nor a test run needs protoc. `python -m neuraxis.workloads.serve.oip.generate` rewrites them;
tests/serve/test_oip_generated.py fails when they drift from the .proto.

Only the server imports these modules: tritonclient and kserve register their own copies of the
same `inference.*` messages, and one process cannot hold two (protobuf's descriptor pool refuses
duplicate symbols), so clients run in their own processes."""
