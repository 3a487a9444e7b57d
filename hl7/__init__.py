"""HL7 v2: MLLP transport, parsing, acknowledgements and mapping to adapter events."""
