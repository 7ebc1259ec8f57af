"""What the server and a client do with a model, for every transport."""
