"""The tasks of vaflax: each module defines what one method trains (`loss_fn`) and reports
(`predict_fn`); vaflax/tasks.py lists them. Multi-stage recipes are in vaflax/recipes.py."""
