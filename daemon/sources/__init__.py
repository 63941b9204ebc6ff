"""Frame sources: picamera2, opencv (device, URL, file), synthetic, and the auto pick."""
