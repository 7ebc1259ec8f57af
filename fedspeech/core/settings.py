GRPC_MAX_MESSAGE_LENGTH = 2_147_483_647  # gRPC's ceiling, Flower's default
