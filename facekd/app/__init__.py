"""The application layer: the model registry, the CLI, the pipeline, prediction, export
and packaging. It wires the core (facekd.*) to the stages (teachers, students, distill,
compress); nothing in the core imports it."""
