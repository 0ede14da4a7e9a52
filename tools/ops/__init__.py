"""What an operator runs against a running stack: tail the topics, redrive dead letters,
retry parked outbox rows, the shop's HTTP client and demo, the event explorer."""
