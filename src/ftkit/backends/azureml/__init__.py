"""The azureml backend: Azure ML through azure-ai-ml, the only part of ftkit that imports Azure."""
