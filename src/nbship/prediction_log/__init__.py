"""Every served request and feedback item: written by serving, read by operate."""
