#!/usr/bin/env bash
# Installs Tesseract OCR with its English model from the OS packages when missing
# (Debian/Ubuntu: tesseract-ocr + tesseract-ocr-eng; macOS: brew). PDF pages without a text
# layer are read with it (docs/retrieval.md); without it they are queued without text.
set -euo pipefail
if command -v tesseract >/dev/null 2>&1 && tesseract --list-langs 2>/dev/null | grep -qx eng; then
  exit 0
fi
echo "tesseract (with English) not found; installing it ..."
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng
elif command -v brew >/dev/null 2>&1; then
  brew install tesseract
else
  echo "Please install Tesseract OCR with English data (https://tesseract-ocr.github.io) and run again." >&2
  exit 1
fi
