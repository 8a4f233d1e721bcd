"""Camera event summariser: detector events in, schema-checked JSON summaries out, through the
local server's OpenAI-compatible API."""
