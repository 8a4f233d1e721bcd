"""The llama.cpp engine: stock libllama through llama-cpp-python, its routing tap and lazy load."""
