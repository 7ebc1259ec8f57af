"""The SpeechBrain side: config, tokenizer, datasets, normalisation, model building, data."""
