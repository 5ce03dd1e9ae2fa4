"""Ingestion: ZIP archives, images (JPEG/PNG/HEIC) and PDFs turned into queueable files."""
