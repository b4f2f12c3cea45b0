"""The deployer service: deploy targets, release history and rollback."""
