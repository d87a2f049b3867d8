"""Wire formats: msgspec Structs for what the gateway reads of each provider's messages."""
