"""The archive stage: capture each episode's audio in the Internet Archive before anyone downloads it."""
