"""Data: raw text input, segmentation, masking, MLM shards, classification readers, batching."""
