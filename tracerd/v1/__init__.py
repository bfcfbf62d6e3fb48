"""Generated protobuf and gRPC code for proto/tracerd/v1: do not edit, run make proto."""
