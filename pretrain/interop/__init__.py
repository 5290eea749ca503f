"""Weight conversion between this project and OpenCLIP / Hugging Face CLIP."""
