"""`lljx bench`: lljx strategies, llama.cpp and Ollama measured the same way on the same prompts.

prompts (what runs), runner (warm-up, prompts x repeats, one row each), peers (llama.cpp and
Ollama), requantize (llama.cpp's GGUF at the compute precision), environment (what it ran
on), roofline (bytes per token against measured bandwidth), report and plots (what it
leaves), compare (two runs side by side), cli (the command).
"""
