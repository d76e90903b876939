"""Notifications: what a change tells people and forges, written to an outbox, sent with retries.

`plan` decides which notification rows an event makes (written by the service in the
transaction of the change), `sender` claims due rows and sends them through the channels
(`email`, `forges` for GitHub and GitLab commit statuses, `webhook`), retrying a temporary
failure with exponential backoff for hours and recording a permanent one.
"""
