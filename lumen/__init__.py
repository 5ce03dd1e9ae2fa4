"""Lumen: image embedding and semantic search on Ray Serve, Redis, open_clip and FAISS."""
