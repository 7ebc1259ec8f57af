"""The Flower App: ServerApp, ClientApp and the Message-API strategy over the round core."""
