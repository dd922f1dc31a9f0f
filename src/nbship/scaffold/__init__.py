"""Starting a project (`nbship init`) and bringing a notebook into one (`nbship adopt`)."""
