"""The processes of a local stack: the Docker engine, the compose plugin and the images."""
