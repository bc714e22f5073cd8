"""mlrollout provider for Google Cloud."""
