"""bpsync: keep BigPanda mapping enrichment tables in git, the way Terraform keeps infrastructure."""

__version__ = "0.1.0"
