"""Study files: YAML to a typed, validated Study, and the checks a study gets before Ray starts."""
