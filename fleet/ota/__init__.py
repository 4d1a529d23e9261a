"""Over-the-air firmware updates. So far the firmware store: signed images, content-addressed
blobs (store.py), their catalog (catalog.py) and the upload that ties them together (firmware.py)."""
