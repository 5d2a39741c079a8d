"""Images in: ImageFolder discovery and checks, the decode-once cache, augmentation, the
device-resident loader, ingest of real datasets, the demo dataset. Imports only core/."""
