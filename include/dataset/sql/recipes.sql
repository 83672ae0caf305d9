-- The recipe catalogue, for the recipes a dataset version refers to (filtered by the caller).
SELECT r.recipe_id::text AS recipe_id, r.name, r.cuisine, r.prep_time, r.cost::float8 AS cost,
       r.ingredients::text AS ingredients, r.tags::text AS tags
FROM app.recipes r
ORDER BY r.recipe_id
