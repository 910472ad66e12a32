"""Native Session Manager data channel: framing, channel state machine, smux, client."""
