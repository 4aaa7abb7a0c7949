"""LoRA fine-tuning with TRL's SFTTrainer, and the base models it starts from."""
