"""Storage: result dataclasses and their JSON/npz form, the bytes-only disk cache, exports."""
