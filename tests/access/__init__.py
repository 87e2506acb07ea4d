"""Who may do what: the access-control matrix of the API and the management pages."""
