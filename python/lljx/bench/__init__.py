"""`lljx bench`: lljx strategies, llama.cpp and Ollama measured the same way on the same prompts.

prompts (what runs), runner (warm-up, prompts x repeats, one row each), peers (llama.cpp and
Ollama), requantize (llama.cpp's GGUF at the compute precision), environment (what it ran
on), caches (the CPU's cache levels), bandwidth (read bandwidth where the working set
lives), roofline (bytes per token by format against that bandwidth), report and plots (what
it leaves), compare (two runs side by side), cold and cold_cli (fresh-process starts,
`--cold`, with llamacpp_child as llama.cpp's side), llamacpp_load (llama.cpp loaded without
its weight repacking where that crashes), cli (the command).
"""
