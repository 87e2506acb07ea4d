"""Message templates: the template language (`syntax`) and saving, checking and previewing
templates (`service`)."""
