"""The model: config, the BERT itself, tokenizer, HF weight names, model dirs, the hub, device and precision."""
