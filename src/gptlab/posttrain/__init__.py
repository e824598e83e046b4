"""After pretraining: instruction fine-tuning, generation, the OpenAI-compatible server and the LLM judge."""
