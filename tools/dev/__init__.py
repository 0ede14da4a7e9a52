"""Development tools: what builds, generates and checks the project's artefacts."""
