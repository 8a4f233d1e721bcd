"""Fuzzing edgemoe's input files (manifest, GGUF, device profiles, traces, usage profiles).

The mutators are plain functions of a `Draw` (seeded `random.Random` for campaigns, hypothesis
for shrinkable property tests); every case that may reach llama.cpp runs in a forked child of
`tests.fuzz.worker`, so a crash or hang is observed and classified, never suffered.
`bench/fuzz_bundles.py` runs the same cases as a longer campaign.
"""
