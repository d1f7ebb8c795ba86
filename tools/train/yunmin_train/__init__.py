"""yunmin_train: the Python/PyTorch side of yunmin.

Modules
  safetensors_io  pure-Python safetensors reader/writer (no `safetensors` package needed)
  tokenizer       pure-Python byte-level BPE reading Hugging Face tokenizer.json
  model           Mamba-1 reference model in plain PyTorch, HF MambaForCausalLM names/layout
  data            text split (last 10 % of characters held out), token cache, batches
  train           training CLI (python -m yunmin_train.train --help)
  evaluate        perplexity CLI, the protocol `yunmin perplexity` also uses
  generate        sampling CLI (samples.txt of the default model)
  masks           sparsity profiles: learned Gumbel-Sigmoid masks, magnitude / random baselines
  adapters        LoRA / IA³, hybrid plan from mask importance, fine-tuning, PEFT files, upload
  sparsity_study  learned vs magnitude vs random masks: information loss, recovery
  peft_study      hybrid PEFT vs LoRA, IA³ and full fine-tuning on one character's voice
  png             a tiny PNG writer for charts without matplotlib

Everything runs on torch 1.13 (CPU) and torch 2.x (CUDA); nothing here imports transformers.
"""

__all__ = ["safetensors_io", "tokenizer", "model", "data", "train", "evaluate", "generate",
           "masks", "adapters", "sparsity_study", "peft_study", "png"]
