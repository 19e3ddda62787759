"""The demo kit: `tollgate demo` (the whole system on one machine) and the fake
OpenAI/Anthropic upstream it runs (`tollgate-mock-llm`), which tests and benchmarks use too."""
