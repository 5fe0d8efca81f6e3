"""Mail: compose a MIME message from an outbox row; transports deliver it (SMTP or Maildir)."""
