"""The Bitbucket webhook service: signed deliveries in, experiments submitted, build statuses out."""
