"""The process's sockets around the ASGI app: TCP and Unix listeners, the connection
guard (deadlines, caps, peer credentials), the file-descriptor budget, uvicorn."""
