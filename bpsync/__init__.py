"""bpsync: keep BigPanda mapping enrichment tables in git, as Terraform keeps infrastructure."""

__version__ = "0.1.0"
