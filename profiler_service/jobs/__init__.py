"""The job worker (claims with a lease, measures, stores) and job views."""
