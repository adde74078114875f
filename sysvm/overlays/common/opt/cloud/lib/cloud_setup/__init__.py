"""Boot-time role setup of a CloudStack system VM (runs inside the image, Debian's python3 only)."""
